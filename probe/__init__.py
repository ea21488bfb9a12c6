"""Analysis side of the REPA toolkit: hidden-state extraction, alignment metrics, linear probes, plots."""
