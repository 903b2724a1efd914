"""Jupyter server settings for this repository, read by `make lab` (JUPYTER_CONFIG_PATH points
here; nothing in your home directory is changed).

Jupytext's contents manager serves notebooks/*.py (jupytext percent scripts) as notebooks and
pairs them with notebooks/*.ipynb (the formats come from jupytext.toml at the repository root).
Jupytext's server extension sets the same contents manager when it is enabled in the
environment; naming it here makes `make lab` independent of that. Which viewer a double click
opens (the notebook, not the text editor) is a JupyterLab setting: see
labconfig/default_setting_overrides.json next to this file.
"""

c = get_config()  # noqa: F821 (defined by the Jupyter config loader)
c.ServerApp.contents_manager_class = "jupytext.AsyncTextFileContentsManager"
