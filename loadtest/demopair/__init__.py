"""The locally built demo teacher/student pair: a generated intent corpus, a WordPiece tokenizer, a BERT
teacher and a BERT student distilled from it, saved as ordinary Hugging Face model directories and cached.

Nothing is downloaded: ``loadtest demo`` must work on a machine that can reach no model hub.
"""

from loadtest.demopair.build import ArchSettings, DemoPair, DemoSettings, build_or_reuse, make_settings, settings_hash

__all__ = ["ArchSettings", "DemoPair", "DemoSettings", "build_or_reuse", "make_settings", "settings_hash"]
