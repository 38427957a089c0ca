"""The Space's page: evaluate's standard metric widget.

The widget is written against gradio 3 (``gr.inputs``), hence ``sdk_version: 3.19.1`` in the card,
as on evaluate's own metric Spaces.
"""

import os
from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

# On a Space, SPACE_ID is "org/name" and the script is name.py; run locally, it is kebench.py here.
module = evaluate.load(os.environ.get("SPACE_ID") or str(Path(__file__).with_name("kebench.py")))
launch_gradio_widget(module)
