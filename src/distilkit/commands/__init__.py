"""CLI subcommands; see ``distilkit.cli`` for the contract each module follows."""
