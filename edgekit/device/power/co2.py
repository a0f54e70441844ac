"""CO2 from energy: grams = kWh x grid carbon intensity (g CO2-eq per kWh). Stdlib only.

The default, 475 g/kWh, is the world-average figure CodeCarbon also uses. Country figures are
rounded yearly averages of electricity generation (approximate; a user who knows their grid
or tariff should pass --grid-intensity). Every printed CO2 figure names the intensity used.
"""

from __future__ import annotations

from dataclasses import dataclass

JOULES_PER_KWH = 3.6e6
WORLD_AVERAGE_G_PER_KWH = 475.0

# ISO 3166 alpha-3 -> g CO2-eq per kWh, rounded; approximate yearly averages of generation.
COUNTRY_G_PER_KWH = {
    "AUS": 550, "BRA": 100, "CAN": 130, "CHE": 40, "CHN": 580, "DEU": 380, "ESP": 170, "FRA": 60,
    "GBR": 240, "IND": 710, "ITA": 330, "JPN": 480, "KOR": 430, "NLD": 270, "NOR": 30, "POL": 660,
    "SWE": 40, "USA": 370, "ZAF": 710,
}


@dataclass(frozen=True)
class GridIntensity:
    grams_per_kwh: float
    origin: str  # "world average (default)", "country FRA (approximate)", "--grid-intensity"

    def grams(self, joules: float) -> float:
        return joules / JOULES_PER_KWH * self.grams_per_kwh

    def label(self) -> str:
        return f"{self.grams_per_kwh:g} g/kWh, {self.origin}"


def grid_intensity(grams_per_kwh: float | None = None, country: str | None = None) -> GridIntensity:
    """The intensity to use: an explicit value wins, then a country code, then the world average."""
    if grams_per_kwh is not None:
        if not grams_per_kwh >= 0:
            raise ValueError(f"grid intensity must be >= 0 g/kWh, got {grams_per_kwh}")
        return GridIntensity(float(grams_per_kwh), "--grid-intensity")
    if country:
        code = country.upper()
        if code not in COUNTRY_G_PER_KWH:
            raise ValueError(f"no grid intensity for country '{country}'; known: {', '.join(sorted(COUNTRY_G_PER_KWH))}"
                             " (or pass --grid-intensity G_PER_KWH)")
        return GridIntensity(float(COUNTRY_G_PER_KWH[code]), f"country {code} (approximate yearly average)")
    return GridIntensity(WORLD_AVERAGE_G_PER_KWH, "world average (default, as CodeCarbon)")
