#!/usr/bin/env python3
"""Animate an avatar with your webcam and stream it to a virtual camera.  Run with --help for the options."""

import sys

from live.cli import main

if __name__ == "__main__":
    sys.exit(main())
