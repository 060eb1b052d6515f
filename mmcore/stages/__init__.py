"""Pipeline stages (DESIGN §3): one CLI-callable implementation each, shared by DVC and Prefect."""
