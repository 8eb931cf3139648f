"""What a researcher looks at: figures for papers, ``apt-research visualize`` and the explore widgets.

- ``figures``: the figure functions (one style for all), fed by sweep summaries and records;
- ``visualize``: the patch overlays of ``apt-research visualize`` (one image or a folder);
- ``explore``: the controls of ``notebooks/explore.ipynb``.

It sits above the core and the models and below the sweep, whose report draws its figures here.
"""
