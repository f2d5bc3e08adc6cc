"""Installs stand-ins for humandiff.data.{pose_render,synthetic} when those modules are not present."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import standins  # noqa: E402

standins.install()
