"""The Python worker (`sluice-py worker`)."""

from __future__ import annotations

import argparse


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module")
