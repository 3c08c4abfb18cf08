"""The report's library: read the pipeline's result files (inputs) and the GPU campaign's (campaign),
measure the run-to-run noise from `repeat:` runs and judge differences against it (noise), shape the
README's tables and the dvc plots series (tables), draw the paper's figures (figures), run generator
checkpoints on test pairs for the sample grids (samples), and the numbers the paper states (paper).
The `report` stage (pipelines/report.py) wires them to files.

Plain pandas / matplotlib / torch: no Ray, DVC or MLflow, so a notebook can draw the same figures
from any project's metrics/ folder.
"""
