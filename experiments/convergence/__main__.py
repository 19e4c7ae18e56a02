"""`python -m experiments.convergence`."""

from . import main


if __name__ == "__main__":
    main()
