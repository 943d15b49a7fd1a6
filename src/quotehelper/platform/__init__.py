"""Quoting engines behind one interface (engine.py): the software platform (sim/) and hardware DCAP."""
