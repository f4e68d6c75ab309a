"""Recommend the deployment that meets the user's constraints (`crossinfer tune`)."""
