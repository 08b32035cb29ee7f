"""A process that compiles outlines-core indexes: run as a script by ``compile_process.CompileProcess``.

Argv: the fd to read requests from, the fd to write replies to, the address-space limit in bytes (0 =
none). Messages are pickles over ``multiprocessing.connection`` framing: first the ``Vocabulary``, then
per compile ``(regex, cpu_seconds)`` -> ``("ok", Index)`` or ``("error", message)``. The address-space
limit makes a runaway DFA construction die (an allocation failure aborts the process) instead of taking
the machine's memory; the CPU limit makes it die even if its parent is gone. It imports nothing but the
standard library and outlines_core, so it starts in a fraction of a second.
"""

import math
import os
import resource
import sys
from multiprocessing.connection import Connection


def main(request_fd: int, reply_fd: int, memory_bytes: int) -> None:
    os.dup2(2, 1)  # a library printing to stdout must not look like a reply
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    from outlines_core import Index

    requests, replies = Connection(request_fd, writable=False), Connection(reply_fd, readable=False)
    vocabulary = requests.recv()
    while True:
        try:
            regex, cpu_seconds = requests.recv()
        except EOFError:  # the parent closed its end: done
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        limit = math.ceil(used.ru_utime + used.ru_stime + cpu_seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (limit, resource.RLIM_INFINITY))
        try:
            replies.send(("ok", Index(regex, vocabulary)))
        except MemoryError:
            replies.send(("memory", ""))
        except (ValueError, TypeError) as e:  # an invalid regex
            replies.send(("error", str(e).strip()))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # library errors, including Rust panics (BaseException in pyo3)
            replies.send(("error", f"{type(e).__name__}: {str(e).strip()}"))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
