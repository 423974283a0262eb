"""What the command-line tools in tools/ share: an argument parser whose errors are one line, naming the flag.

The package raises errors that name its own keys (``batch_size: must be >= 1``, ``model.name: ...``); a tool maps
them onto its flags (``--batch-size: must be >= 1``): every option's ``dest`` maps to the option by default, and a
tool adds the keys whose flag has another name (``aliases``).
"""
import argparse
from typing import Mapping, NoReturn, Optional

__all__ = ['ToolParser']


class ToolParser(argparse.ArgumentParser):
    def __init__(self, *args, aliases: Optional[Mapping[str, str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.aliases = dict(aliases or {})

    def error(self, message: str) -> NoReturn:
        # one line, no usage block: the message already names what is wrong and what is allowed
        self.exit(2, f'{self.prog}: error: {message}\n')

    def flag_for(self, key: str) -> Optional[str]:
        if key in self.aliases:
            return self.aliases[key]
        for action in self._actions:
            if action.dest == key and action.option_strings:
                return max(action.option_strings, key=len)
        return None

    def fail(self, error: Exception) -> NoReturn:
        """Exit with `error` as one line, its leading ``key:`` replaced by the tool's flag for that key."""
        message = ' '.join(str(error).split())
        key, sep, rest = message.partition(': ')
        flag = self.flag_for(key) if sep and ' ' not in key else None
        self.error(f'{flag}: {rest}' if flag else message)
