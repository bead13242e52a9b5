"""The plugin's commands (console scripts in pyproject.toml). What their parsers share."""

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with "(default: X)" after an option's help, except where there is
    nothing to say (a required option, a switch, no default) or the help says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.required or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or "default" in text):
            return text
        return f"{text} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
