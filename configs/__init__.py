"""Data: example network.yaml files and the Jinja2 templates of system files."""

from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
EXAMPLES = Path(__file__).parent / "examples"
