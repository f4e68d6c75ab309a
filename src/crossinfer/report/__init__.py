"""The tune report: a self-contained HTML file with plotly figures, drawn from tune.json."""
