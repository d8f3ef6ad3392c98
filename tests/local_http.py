"""A local HTTP server on 127.0.0.1 serving a folder, for the tests of
downloads (no internet here). A client that hangs up on purpose (a download
cut off) is no error, and stopping the server waits for its request threads,
so that nothing one of them prints lands in a later test's output."""
import functools
import http.server
import sys
import threading


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve_folder(folder):
    """A started :class:`LocalServer` for ``folder``; stop it with :func:`stop`."""
    server = LocalServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()
