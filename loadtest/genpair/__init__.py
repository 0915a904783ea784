"""The locally built generative pair: a customer-support task corpus with reference answers, a byte-level BPE
tokenizer, a Llama-style teacher and a smaller student distilled from it token by token, cached by settings.

Nothing is downloaded: the generative demo must work on a machine that can reach no model hub.
"""

from loadtest.genpair.build import GenPair, GenSettings, LmArch, build_or_reuse, make_settings

__all__ = ["GenPair", "GenSettings", "LmArch", "build_or_reuse", "make_settings"]
