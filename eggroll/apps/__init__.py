"""The commands' applications.

Each module builds a strategy and a fitness, says what to evaluate and what to
write, and runs the one loop (:func:`eggroll.run.loop.run`).
"""
