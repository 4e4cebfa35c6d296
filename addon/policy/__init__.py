"""policy_ir v1."""
