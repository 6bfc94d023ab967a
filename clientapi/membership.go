package clientapi

import "github.com/gorilla/mux"

func (a *API) membershipRoutes(r *mux.Router) {}
