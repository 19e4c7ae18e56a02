"""`python -m experiments.mnist_compare`."""

from . import main


if __name__ == "__main__":
    main()
