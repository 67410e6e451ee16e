"""``python -m attnrhythm``: the CLI, also for launchers that take a module (``torchrun -m``,
``accelerate launch -m``)."""

from attnrhythm.cli import main

if __name__ == "__main__":
    main()
