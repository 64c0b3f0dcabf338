"""Verification: re-export comparison, bundle consistency, parity localization, time limits and signatures."""
