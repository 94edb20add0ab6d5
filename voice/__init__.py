"""Voice: decoding what users send (silk, amr, mp3, wav, ogg) and encoding what the bot says (QQ's silk)."""
