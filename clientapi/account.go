package clientapi

import "github.com/gorilla/mux"

func (a *API) accountRoutes(r *mux.Router) {}
