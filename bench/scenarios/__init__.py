"""The five scenarios of issue 7, each returning a Result."""
