#!/usr/bin/env python3
"""Animate an avatar with your webcam and stream it to a virtual camera.  Run with --help for the options."""

import sys

if __name__ == "__main__":
    try:
        from live.cli import main  # imports torch: seconds, during which Ctrl-C must not print a traceback
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
