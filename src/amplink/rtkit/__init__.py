"""Apple RTKit, the protocol of co-processors behind a 64-bit mailbox, without I/O.

* :mod:`.messages`: endpoints, message types, fields, power states;
* :mod:`.host`: the host's state machine (Linux's rtkit.c), fed messages, returning
  what to do;
* :mod:`.coproc`: the co-processor's state machine (what amplink's firmware runtime
  speaks);
* :mod:`.syslog` and :mod:`.crashlog`: the buffers' layouts, decoded and built;
* :mod:`.errors`: the typed errors.

The runtimes around them are :mod:`amplink.platforms.rtkit` (host) and
:mod:`amplink.firmware.rtkit` (co-processor). See docs/rtkit.md.
"""
