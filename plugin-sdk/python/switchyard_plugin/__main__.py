"""``python -m switchyard_plugin build plugin.py -o plugin.wasm``."""

import sys

from .build import main

main(sys.argv[1:])
