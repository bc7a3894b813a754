"""Example firmware for simulated processors (run with ``amplink run MODULE``)."""
