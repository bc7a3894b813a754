"""Example firmware for simulated processors (run with ``amplink run MODULE``).

``native_echo.c`` is native firmware in C: build it with gcc and run the executable
(``amplink run --native ./native_echo``, or ``SimRemoteProc("./native_echo")``).
"""
