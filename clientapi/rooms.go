package clientapi

import "github.com/gorilla/mux"

func (a *API) roomRoutes(r *mux.Router) {}
