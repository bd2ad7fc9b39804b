"""The cloud gateway: business API for hospital apps, payment channels, the payment and refund sagas that keep
the money and the HIS consistent, and notifications to business systems."""
