"""Statecharts of the updater, rendered from :data:`updater_fsm.core.table.TRANSITIONS`."""
