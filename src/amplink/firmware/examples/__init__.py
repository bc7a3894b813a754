"""Example firmware for simulated processors (run with ``amplink run MODULE``).

``native_echo.c`` is native firmware in C: build it with gcc and run the executable
(``amplink run --native ./native_echo``, or ``SimRemoteProc("./native_echo")``).
``native_frames.c`` takes buffers by reference and inverts them in place. Both use
``amplink_rpmsg.h`` (the device side of an rpmsg link); ``native_frames.c`` also
``amplink_buffers.h`` (the buffer socket and hand-over records; docs/large-data.md).
"""
