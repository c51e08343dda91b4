"""Charges: a customer pays for an order."""

FEE_CENTS = 30


def charge(order_cents: int) -> int:
    """What the customer pays: the order and the fixed fee, in cents."""
    return order_cents + FEE_CENTS


def split(total_cents: int, parts: int) -> list[int]:
    """Split a total into `parts` payments that add up to it exactly."""
    # TODO: support weighted splits
    base, rest = divmod(total_cents, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]
