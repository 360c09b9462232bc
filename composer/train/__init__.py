"""Training around a built model: the optimizer's parameter groups from a recipe's ``optim.groups``."""
