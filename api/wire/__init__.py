"""Wire types of the protocols herd speaks, named as upstream names them."""
