"""The run's hyperparameters in one place (:data:`HYP`): the defaults of the
command line's flags and the constants of the schedule, the update rules, the
initialisation and BatchNorm. Every module that uses one reads it here, so a
number is stated once; a flag changes only its own, for one run. Why each
value: docs/network.md ("Optimizer", initialisation) and docs/resnet.md."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Hyperparameters:
    #: records, each followed by a validation and a snapshot (-nrec): the original's
    num_records: int = 100
    #: training iterations per record (-ipr): the original's
    iters_per_record: int = 100
    #: images per training step, drawn uniformly with replacement (-bsize): the original's
    batch_size: int = 64
    #: images per validation step: sets memory and speed only, the mean is over the whole set
    valid_batch: int = 100
    #: the update rule (--optimizer) and the first record's learn rate (-lr): of the candidates measured,
    #: plain SGD at 0.2 (on the mean over batch and classes) comes closest to the original's published curves
    optimizer: str = "sgd"
    learn_rate: float = 0.2
    #: the learn rate decays exponentially to learn_rate * learn_decay by the last record (-ld): the original's
    learn_decay: float = 0.5
    #: the conv layers' learn rate over the others' (--conv-lr-scale): one rate for all, as the original
    conv_lr_scale: float = 1.0
    #: --optimizer momentum: v = momentum * v + g, the usual heavy-ball value
    momentum: float = 0.9
    #: --optimizer adam: Kingma and Ba's defaults
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    #: cnn's conv kernel size (-fsize); every other model's conv layers are 3x3
    filter_size: int = 3
    #: dropout after each conv layer of --arch original, training only (-pdpo): the original's
    dropout: float = 0.25
    #: weights uniform in +-init_scale / sqrt(fan_in + fan_out) (dense and dense conv layers): the original's
    init_scale: float = 1.4
    #: an fxnn layer's 1x1 weights uniform in +-fxnn_1x1_init_scale / sqrt(5M + N): the original's
    fxnn_1x1_init_scale: float = 0.3
    #: --arch resnet: channels of the first stage (--width) and layers (--depth, 6n+2): He et al.'s ResNet-20
    resnet_width: int = 16
    resnet_depth: int = 20
    #: --arch resnet's BatchNorm: running statistics' momentum and the variance's eps, PyTorch's defaults
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5


#: The hyperparameters every run starts from.
HYP = Hyperparameters()
