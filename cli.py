"""Run the fnnp-opt command line from a checkout: ``python cli.py run ...``."""

from fnnp_opt.cli import app

if __name__ == "__main__":
    app()
