"""What a chain file may reach: allowances, folders, imports, the project root, secrets."""
