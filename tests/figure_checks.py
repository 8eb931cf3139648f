"""Checks of drawn figures shared by the figure and report tests."""


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def legends_clear_of_data(figure) -> bool:
    """True when no legend of ``figure`` overlaps the data area of any of its axes."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None] + list(figure.legends)
    boxes = [ax.get_window_extent(renderer) for ax in figure.axes if ax.get_label() != "<colorbar>"]
    return all(not _overlaps(legend.get_window_extent(renderer), box) for legend in legends for box in boxes)
