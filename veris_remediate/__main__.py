"""``python -m veris_remediate`` runs the command line."""

from veris_remediate.cli import main

main()
