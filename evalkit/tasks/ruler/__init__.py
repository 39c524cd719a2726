"""NVIDIA's RULER, its synthetic tasks made by evalkit at exact lengths (protocol: RULER's
own strings and settings; haystacks: its haystacks and needle values; niah: the eight
needle-in-a-haystack tasks)."""
