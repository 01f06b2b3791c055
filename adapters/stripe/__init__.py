"""Stripe-like processor: the REST protocol of Stripe's refunds API and its signed webhooks."""

from adapters.stripe.client import StripeAdapter

__all__ = ["StripeAdapter"]
