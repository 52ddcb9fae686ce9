"""The list prices every cost figure uses, in one place (benchmarks/cost.py, benchmarks/row_cost.py)."""

# List prices, USD, East US, pay-as-you-go. Where they come from, and when, is in docs/COST.md.
PRICES = {
    "flex_gb_second": 0.000026,
    "flex_million_executions": 0.40,
    "flex_free_gb_seconds": 100_000,
    "flex_free_executions": 250_000,
    # Sentinel's simplified pay-as-you-go price: Log Analytics ingestion and Sentinel analysis together
    # (the classic tiers, for workspaces not moved to it: 2.76 + 2.46 = 5.22).
    "sentinel_analytics_gb": 4.30,
    "log_analytics_gb": 2.76,
    "table_10k_transactions": 0.00036,
    "table_gb_month": 0.045,
    "key_vault_10k_operations": 0.03,
}
PRICES_AS_OF = "list prices read in 2025-2026 (see docs/COST.md, Sources); not re-read live"
