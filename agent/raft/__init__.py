"""The Primary spore: the pysyncobj store, its crash-safe journal, membership rules, secrets."""
