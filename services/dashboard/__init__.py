"""The dashboard served by the app at `/`: searches, Pareto fronts, trials, subnets, LUT coverage."""

from services.dashboard.router import install_dashboard

__all__ = ["install_dashboard"]
