package clientapi

import "github.com/gorilla/mux"

func (a *API) filterRoutes(r *mux.Router) {}
