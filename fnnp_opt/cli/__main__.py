"""``python -m fnnp_opt.cli``: the command line (torchrun starts it this way: ``torchrun -m fnnp_opt.cli run``)."""

from fnnp_opt.cli import app

if __name__ == "__main__":
    app()
